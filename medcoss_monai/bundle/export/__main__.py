"""``python -m medcoss_monai.bundle.export``: see :func:`medcoss_monai.bundle.export.zoo.main`."""

from medcoss_monai.bundle.export.zoo import main

if __name__ == "__main__":
    main()

"""The methods beyond the MedCoSS core, one folder each, as MONAI's ``monai.apps``: BrainMVP and MUSCLE."""

"""medcoss_monai.losses"""

"""medcoss_monai.networks"""

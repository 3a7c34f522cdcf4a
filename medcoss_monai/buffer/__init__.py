"""medcoss_monai.buffer"""

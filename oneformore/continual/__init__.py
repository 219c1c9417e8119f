"""oneformore.continual"""

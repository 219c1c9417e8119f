"""oneformore.data"""

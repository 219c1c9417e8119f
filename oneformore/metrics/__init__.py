"""oneformore.metrics"""

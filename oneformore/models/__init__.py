"""oneformore.models"""

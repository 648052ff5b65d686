"""Search by region and refine by example: do they help?"""

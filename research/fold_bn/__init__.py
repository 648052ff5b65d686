"""Folding batch norms into convolutions: does a query get faster?"""

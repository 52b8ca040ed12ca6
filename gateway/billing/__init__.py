"""Customers, saved cards and recurring billing: the API service and the scheduler."""

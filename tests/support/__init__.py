"""Helpers the tests share: paths of the checkout, and switches and controllers to test against.

Test modules import from here, never from one another.
"""

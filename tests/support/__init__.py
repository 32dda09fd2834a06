"""Test infrastructure: fixtures, servers and helpers the test suites share; nothing in the product imports it."""

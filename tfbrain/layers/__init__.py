"""Shared blocks used by more than one model family."""

"""Thin Ray entry points: configuration -> Ray objects -> ``ecom2f.steps``; no logic here."""

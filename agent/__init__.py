"""Lepton Edge: an on-device agent that turns cameras and sensors into results a datacenter can use."""

__version__ = "0.1.0"

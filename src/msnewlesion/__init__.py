"""msnewlesion: new multiple sclerosis lesions in pairs of FLAIR scans, with the CoactSeg method."""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Small helpers every layer may import (no torch, no partial_fc imports): atomic files, progress lines."""

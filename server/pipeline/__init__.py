"""Per-frame stages: decode, detect, crop (the eval preset), classify."""

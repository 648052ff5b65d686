"""Settings for images from other clinics (ham10000_dev), external rounds 1-3."""

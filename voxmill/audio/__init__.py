"""Audio: formats and conversion (``formats``), file transcoding and measurement, silence splitting."""

"""Capture sources: OpenCV (files, V4L2, RTSP, GStreamer), the synthetic scene, replay."""

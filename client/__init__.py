"""emotion-client: stream a webcam, video or image folder to the server and show what it sees.

Only OpenCV (headless), websockets, httpx, numpy, pydantic and matplotlib: no torch, so it
installs on a laptop or a Raspberry Pi next to the camera.
"""

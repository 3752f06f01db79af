"""In-process emotion analysis: the server's pipeline as a library, without starting the server.

    from emotion_service import EmotionAnalyzer
    analyzer = EmotionAnalyzer()                  # bundled model; CUDA when available, else CPU
    reply = analyzer.analyze("photo.jpg")         # path, bytes, PIL image or numpy array (RGB)
    for face in reply.faces:
        print(face.box, face.dominant, face.emotions[face.dominant])

Replies are the :mod:`shared.protocol` objects ``POST /v1/predict`` returns; the server
(:mod:`server.runtime`) is built on this same class.
"""

from __future__ import annotations

from emotion_service.analyzer import ChannelOrder, EmotionAnalyzer, ImageInput, to_decoded
from server.pipeline.decode import CorruptImage, DecodeError, ImageTooLarge, UnsupportedImage
from shared.protocol import FaceBox, FaceResult, PredictResponse

__all__ = [
    "ChannelOrder",
    "CorruptImage",
    "DecodeError",
    "EmotionAnalyzer",
    "FaceBox",
    "FaceResult",
    "ImageInput",
    "ImageTooLarge",
    "PredictResponse",
    "UnsupportedImage",
    "to_decoded",
]

"""Offline face detection (MTCNN, five landmarks) and similarity alignment with paste-back for face parsing."""

from agrnet.detection.align import (
    FACE_TEMPLATE,
    align_face,
    alignment_matrix,
    parse_photo_faces,
    paste_back,
)
from agrnet.detection.mtcnn import MTCNN, Face

__all__ = [
    "FACE_TEMPLATE",
    "MTCNN",
    "Face",
    "align_face",
    "alignment_matrix",
    "parse_photo_faces",
    "paste_back",
]

"""DICOM output objects (SEG, TID 1500 SR, secondary-capture overlays), coded concepts and
UIDs. Usable without the node and without any model."""

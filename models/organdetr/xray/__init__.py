"""X-ray views to 3D boxes (MV2D-style): camera model, views files, DRR rendering, silhouettes, scenes, carving and
the mean-box prior. Conventions are defined once, in :mod:`organdetr.xray.camera`."""

"""OrganDETRSlicerLib: all behaviour of the OrganDETR Slicer module, without any GUI.

Every function takes the MRML scene (or nodes) as arguments and imports nothing from qt, ctk or slicer.app, so the
whole package runs with slicer-core in plain Python (CI) as well as inside 3D Slicer. Submodules are imported
explicitly by their users; importing the package itself does no work.
"""

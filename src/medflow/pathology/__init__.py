"""Whole-slide imaging: conversion of vendor slide files to DICOM VL Whole Slide Microscopy
(PS3.3 A.32.8) and their import into the archive (issue 9)."""

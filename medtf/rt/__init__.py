"""Radiotherapy objects: brachytherapy plans (catheter polylines), RT Structure Sets, and their rasterisation."""

from medtf.rt.brachy_plan import BrachyPlan, Catheter, check_frame_of_reference, read_brachy_plan
from medtf.rt.catheter_io import read_catheters_json, write_catheters_json, write_reconstructed_plan
from medtf.rt.catheter_match import CatheterMatch, match_catheters
from medtf.rt.polyline import dedup_consecutive, polyline_length, resample_polyline
from medtf.rt.rasterize import catheter_bounding_box, polyline_distance_map, rasterize_polylines
from medtf.rt.reconstruct import ImplausibleMaskError, orient_catheter, orient_catheters, reconstruct_catheters
from medtf.rt.rtplan_writer import write_brachy_plan
from medtf.rt.rtstruct import RoiContours, read_rtstruct, rtstruct_to_masks

__all__ = [
    "BrachyPlan",
    "Catheter",
    "CatheterMatch",
    "ImplausibleMaskError",
    "RoiContours",
    "catheter_bounding_box",
    "check_frame_of_reference",
    "dedup_consecutive",
    "match_catheters",
    "orient_catheter",
    "orient_catheters",
    "polyline_distance_map",
    "polyline_length",
    "rasterize_polylines",
    "reconstruct_catheters",
    "read_brachy_plan",
    "read_catheters_json",
    "read_rtstruct",
    "resample_polyline",
    "rtstruct_to_masks",
    "write_brachy_plan",
    "write_catheters_json",
    "write_reconstructed_plan",
]

"""Synthetic georeferenced aerial scenes with exact building and road ground truth.

``synthesize_scene`` writes ``<name>.tif`` (tiled 512, DEFLATE, north-up, any CRS) and the
truth it was painted from: ``<name>_truth.gpkg`` (layers ``buildings``, ``roads``,
``road_centerlines``) plus ``<name>_buildings.geojson`` and ``<name>_roads.geojson``.

What a scene holds (sizes at the default 0.5 m per pixel):

* ground: grass, dry grass and bare soil mixed by smooth noise (features of 20-150 m),
  with fine texture;
* roads: a connected network from a rotated, jittered grid (``road_spacing_m``, default
  110 m) of gently curved roads -- local 6-8.5 m wide, main 10-14 m (darker, dashed
  centre line), some dead ends 6-7 m; truth polygons are the centrelines buffered by half
  their width;
* buildings: facing the roads on plots 3-8 m behind the road edge -- rectangular houses
  (8-15 m), L and T shapes (10-22 m), rows of 2-6 attached terraced houses (7-10 m each,
  sharing walls exactly) and large flat-roofed blocks (20-40 m); roofs in terracotta,
  brown, anthracite, slate, concrete; flat roofs white, gravel, concrete, tar or metal;
  never closer than 1.5 m to a road;
* shadows: every building and tree casts one to the same side (direction and length drawn
  per scene: 0.35-0.7 m per metre of height). Shadow pixels are not building truth;
* trees: clustered round crowns of 1.8-4.2 m radius (gardens and small woods), clear of
  roads and buildings; not part of the truth.

Pixels depend only on the seed and the options, never on the window size used to write.
``CONTENT_VERSION`` (also in the GeoTIFF tag ``GEOUNET_SYNTH_VERSION``) changes whenever
what a seed produces changes.
"""

from geounet.synth.scene import CONTENT_VERSION, SynthScene, synthesize_scene, synthesize_set

__all__ = ["CONTENT_VERSION", "SynthScene", "synthesize_scene", "synthesize_set"]

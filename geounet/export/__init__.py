"""A scene's output folder: file names, GeoJSON/GeoPackage, probability COG, quicklook."""

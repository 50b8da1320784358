"""Reports that read finished run directories: the study page, localisation tables, run comparisons."""

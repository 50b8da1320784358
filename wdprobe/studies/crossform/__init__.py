"""Cross-form studies: does the deed use the stance the word states? (interchange interventions on a learned subspace)"""

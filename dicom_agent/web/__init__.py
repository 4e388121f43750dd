"""⑨ Review: the radiologist worklist web app."""

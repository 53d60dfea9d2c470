"""What SPARK adds: judge and reflection prompt templates (`templates`) and the recycling of
verified rollouts into judge data with known labels (`recycle`; `recycle_file` for any file)."""

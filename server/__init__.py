"""The coordinator: admission, registry, planner, pipeline router."""

# The kernel-test fixtures (array, fc_array, faults, leak check) are a plugin so
# that every tier sees the same markers; its fixtures only run in the guest.
pytest_plugins = ["tests.kernel.plugin"]

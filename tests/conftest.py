pytest_plugins = ["tests.fixtures.seaweed"]

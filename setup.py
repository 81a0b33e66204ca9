from setuptools import find_packages, setup

setup(
    name="hostagent",
    version="0.1.0",
    description="Host-side storage agent: iSCSI/FC attach, dm-multipath, health, preflight",
    packages=find_packages(include=["hostagent", "hostagent.*"]),
    python_requires=">=3.11",
    install_requires=[
        "os-brick",
        "pyroute2",
        "pyudev",
        "oslo.concurrency",
        "aiohttp",
        "prometheus-client",
    ],
    extras_require={
        "test": ["pytest", "mypy", "ruff", "rtslib-fb", "schemathesis==4.32.5", "matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "hostagent = hostagent.agent.daemon:main",
            "hostagent-cli = hostagent.cli.main:main",
        ],
    },
    data_files=[
        ("share/hostagent/multipath.conf.d",
         ["etc/multipath.conf.d/datera.conf", "etc/multipath.conf.d/kaminario.conf"]),
        ("share/hostagent/etc", ["etc/hostagent/hostagent.conf"]),
        ("share/hostagent/systemd", ["etc/systemd/hostagent.service"]),
    ],
)

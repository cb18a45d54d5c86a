from setuptools import find_packages, setup

# The Dagster family is pinned as a set: these versions install together
# (dagster-webserver 1.13.28 does not exist).
DAGSTER_VERSION = "1.13.27"
INTEGRATIONS_VERSION = "0.29.27"

setup(
    name="credflow",
    version="0.1.0",
    description="Dagster code location for the file flows of a therapist-credentialing operation",
    python_requires=">=3.11,<3.12",
    packages=find_packages(exclude=["credflow_assets_tests"]),
    include_package_data=True,
    # Not Python, still part of the package: the local stack's dagster.yaml, and the drive feeds'
    # column digest (without it every process that loads the definitions imports pandera).
    package_data={"credflow_assets.local": ["dagster.yaml"],
                  "credflow_assets.drive_feeds": ["model_columns.json"]},
    install_requires=[
        f"dagster=={DAGSTER_VERSION}",
        f"dagster-webserver=={DAGSTER_VERSION}",
        # Dagster's current CLI: `dg check defs`, `dg list defs`, `dg dev` (credflow dev uses it)
        f"dagster-dg-cli=={DAGSTER_VERSION}",
        f"dagster-aws=={INTEGRATIONS_VERSION}",
        "pandera==0.35.0",
        "pandas==2.3.3",
        # Drive feed CSVs: read by Arrow's C++ reader, cells kept as Arrow strings (RE2 regexes)
        "pyarrow==26.0.1",
        # ...staged into SQLite from Arrow by ADBC, in C with the GIL released
        "adbc-driver-sqlite==1.13.0",
        "adbc-driver-manager==1.13.0",
        # ...and copied into an empty PostgreSQL feed table as binary COPY rows, encoded by pgpq
        "pgpq==0.12.0",
        "paramiko==5.1.0",
        # provider files: gzip inflated by ISA-L, 3 times zlib's speed (provider_feeds/streams.py)
        "isal==1.9.1",
        "python-gnupg==0.5.7",
        "google-api-python-client==2.202.0",
        "google-auth==2.62.2",
        "boto3==1.44.5",
        # 2.0: dagster-postgres builds `postgresql://` URLs for psycopg2, which 2.1 maps to psycopg 3.
        "SQLAlchemy==2.0.58",
        "pydantic==2.14.3",
        "PyYAML==6.0.3",
        "click>=8.1",
        # therapist document renditions
        "img2pdf==0.6.3",
        "pypdf==7.1.0",
        "pillow-heif==1.8.1",
        # Drive feed spreadsheets
        "openpyxl==3.1.5",
    ],
    extras_require={
        # The embedded local stack (`credflow local up`, make demo/dev/test): a production
        # install carries no moto and no aiosmtpd (the local SMTP server).
        "local": ["moto[server]==5.2.5", "aiosmtpd==1.4.6"],
        # websockets: the browser tests drive chromium over the DevTools protocol;
        # pytest-xdist: `make test` runs the suite in two workers (it mostly waits on services)
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "awscli==1.46.3", "websockets==17.4"],
        "postgres": [f"dagster-postgres=={INTEGRATIONS_VERSION}", "psycopg2-binary==2.9.13"],
        "celery": [f"dagster-celery=={INTEGRATIONS_VERSION}"],
        "k8s": [f"dagster-k8s=={INTEGRATIONS_VERSION}"],
    },
    entry_points={"console_scripts": ["credflow=credflow_assets.cli:main"]},
)

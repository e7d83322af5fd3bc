#!/usr/bin/env bash
# The CDC walk-through against the docker-compose deployment, with the consumer
# running (scripts/run-consumer.sh): inserts, updates and deletes in the source
# (tests/e2e/walkthrough.sql), then waits until the PostgreSQL target, the data
# lake's processed tables and the Delta tables in ./deltalake equal the source
# row for row, and both histories (cdc_raw.cdc_events, Delta cdc_events) agree.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require psql "apt-get install postgresql-client"
require python3 "install Python 3"
source "$root/scripts/python-env.sh"
python_env # the deltalake reader, in the project's .venv
delta_root=${CDC_DELTA_ROOT:-$root/deltalake}

echo "source before:"
psql -X "$SOURCE_URL" -c "SELECT 'customers' AS t, count(*) FROM customers UNION ALL SELECT 'products', count(*) FROM products UNION ALL SELECT 'orders', count(*) FROM orders UNION ALL SELECT 'order_items', count(*) FROM order_items"
psql -X -q -v ON_ERROR_STOP=1 "$SOURCE_URL" -f "$root/tests/e2e/walkthrough.sql"
echo "changes made; waiting for every sink to follow (up to 120 s)"
"$python" "$root/tests/e2e/check.py" "$SOURCE_URL" "$TARGET_URL" "$DATALAKE_URL" "$delta_root" - --wait 120

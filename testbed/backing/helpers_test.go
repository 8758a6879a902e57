package backing

import (
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// openCH opens a clickhouse-go connection with the given options.
func openCH(o *clickhouse.Options) (driver.Conn, error) { return clickhouse.Open(o) }

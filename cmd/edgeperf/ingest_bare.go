package main

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// bareSameRows is the physical limit of the ingest's own rows: one row the
// runner inserted (read back from its table, every column) is inserted
// again, bareBatch copies a batch (distinct request ids), into a table of the
// same structure, with the bare insert's client (native, lz4, one
// connection, column-wise appends) and for as long. The bare insert of
// the limits sends slimmer rows (one header each way, the columns of
// post-resp only); this one costs ClickHouse what the ingest's rows cost
// it.
func (res *ingestResult) bareSameRows(ctx context.Context, o *options, e *env) error {
	const table = "edgeperf_bare_rows"
	if err := e.ch.Exec(ctx, "CREATE TABLE default."+table+" AS default."+ingestTable); err != nil {
		return fmt.Errorf("bare insert of the ingest's rows: create table: %w", err)
	}
	defer func() { _ = e.ch.Exec(context.Background(), "DROP TABLE default."+table) }()
	conn, err := bareConn(e)
	if err != nil {
		return fmt.Errorf("bare insert of the ingest's rows: %w", err)
	}
	defer conn.Close()
	rows, err := conn.Query(ctx, "SELECT * FROM default."+ingestTable+" LIMIT 1")
	if err != nil {
		return fmt.Errorf("bare insert of the ingest's rows: read a row: %w", err)
	}
	types := rows.ColumnTypes()
	vals := make([]any, len(types))
	for i, ct := range types {
		vals[i] = reflect.New(ct.ScanType()).Interface()
	}
	if !rows.Next() {
		rows.Close()
		return fmt.Errorf("bare insert of the ingest's rows: the ingest's table is empty")
	}
	if err := rows.Scan(vals...); err != nil {
		rows.Close()
		return fmt.Errorf("bare insert of the ingest's rows: read a row: %w", err)
	}
	rows.Close()
	names := make([]string, len(types))
	cols := make([]any, len(types))
	for i, ct := range types {
		names[i] = ct.Name()
		v := reflect.ValueOf(vals[i]).Elem()
		col := reflect.MakeSlice(reflect.SliceOf(v.Type()), bareBatch, bareBatch)
		for k := 0; k < bareBatch; k++ {
			if ct.Name() == "request_id" && v.Kind() == reflect.String {
				col.Index(k).SetString("bare-" + strconv.Itoa(k))
				continue
			}
			col.Index(k).Set(v)
		}
		cols[i] = col.Interface()
	}
	n, took, err := timedInsert(ctx, e, conn, table, strings.Join(names, ", "), cols, o.insertFor)
	if err != nil {
		return fmt.Errorf("bare insert of the ingest's rows: %w", err)
	}
	res.bareRows, res.bareTime, res.bareCols = n, took, len(names)
	return nil
}

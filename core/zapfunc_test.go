package core

import "go.uber.org/zap/zapcore"

// zapcoreFunc is a zapcore.Core that hands each message to f.
type zapcoreFunc func(msg string)

func (f zapcoreFunc) Enabled(zapcore.Level) bool        { return true }
func (f zapcoreFunc) With([]zapcore.Field) zapcore.Core { return f }
func (f zapcoreFunc) Sync() error                       { return nil }
func (f zapcoreFunc) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, f)
}
func (f zapcoreFunc) Write(e zapcore.Entry, _ []zapcore.Field) error { f(e.Message); return nil }

package testbed

import "syscall"

// sysProcAttr kills the runner if the test process dies (a safety net of
// the test bed; APISIX's ngx.pipe does not do this).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

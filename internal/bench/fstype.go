package bench

import (
	"fmt"
	"os"
	"syscall"
)

// Linux file system magic numbers (statfs(2)) the report names.
var fsNames = map[int64]string{
	0xEF53:     "ext4",
	0x58465342: "xfs",
	0x9123683E: "btrfs",
	0x01021994: "tmpfs",
	0x794c7630: "overlayfs",
	0x2FC12FC1: "zfs",
	0x6969:     "nfs",
}

// describeDir names dir (os.TempDir() when empty) and its file system type,
// warning when it is a memory file system, where fsync costs nothing and
// storage writes look cheaper than on a disk.
func describeDir(dir string) string {
	if dir == "" {
		dir = os.TempDir()
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Sprintf("%s (file system unknown: %v)", dir, err)
	}
	name, ok := fsNames[int64(st.Type)]
	if !ok {
		name = fmt.Sprintf("file system type %#x", st.Type)
	}
	if name == "tmpfs" {
		return dir + " (tmpfs: in memory, fsync is free — not a local disk)"
	}
	return fmt.Sprintf("%s (%s)", dir, name)
}

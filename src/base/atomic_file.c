/* atomic_file.c: write to a temporary file, then rename (see atomic_file.h). */
#include "base/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/common.h"

int duet_atomic_open(duet_atomic *a, const char *path, duet_error *err) {
    memset(a, 0, sizeof *a);
    size_t n = strlen(path);
    a->path = strdup(path);
    a->tmp = malloc(n + 5);
    if (!a->path || !a->tmp) {
        duet_atomic_abort(a);
        return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(a->tmp, path, n);
    memcpy(a->tmp + n, ".tmp", 5);
    if (!(a->f = fopen(a->tmp, "wb"))) {
        int rc = duet_fail(err, DUET_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(errno));
        duet_atomic_abort(a);
        return rc;
    }
    return DUET_OK;
}

/* The rename is only durable once the directory entry is on disk; some filesystems refuse
 * to fsync a directory, which costs durability but not correctness, so errors are ignored. */
static void sync_parent_dir(const char *path) {
    char *dir = strdup(path);
    if (!dir) return;
    char *slash = strrchr(dir, '/');
    const char *d = slash ? (slash == dir ? "/" : (*slash = 0, dir)) : ".";
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

int duet_file_finish(FILE *f, const char *tmp, const char *path, const char **step) {
    const char *s = "write";
    int ok = !ferror(f) && fflush(f) == 0;
    if (ok) { s = "fsync"; ok = fsync(fileno(f)) == 0; }
    int e = errno;
    if (fclose(f) != 0 && ok) { s = "close"; ok = 0; e = errno; }
    if (ok) { s = "rename"; ok = rename(tmp, path) == 0; e = errno; }
    if (step) *step = s;
    if (!ok) {
        errno = e ? e : EIO;
        return -1;
    }
    sync_parent_dir(path);
    return 0;
}

int duet_atomic_commit(duet_atomic *a, duet_error *err) {
    if (!a->f) {
        duet_atomic_abort(a);
        return duet_fail(err, DUET_ERR_IO, "file was not opened for writing");
    }
    const char *step;
    int rc = DUET_OK;
    if (duet_file_finish(a->f, a->tmp, a->path, &step)) {
        rc = duet_fail(err, DUET_ERR_IO, "%s: cannot %s temporary file: %s", a->path, step,
                       strerror(errno));
        unlink(a->tmp);
    }
    a->f = NULL;
    free(a->tmp);
    free(a->path);
    memset(a, 0, sizeof *a);
    return rc;
}

void duet_atomic_abort(duet_atomic *a) {
    if (a->f) {
        fclose(a->f);
        unlink(a->tmp);
    }
    free(a->tmp);
    free(a->path);
    memset(a, 0, sizeof *a);
}

int duet_atomic_write(const char *path, const void *data, size_t n, duet_error *err) {
    duet_atomic a;
    int rc = duet_atomic_open(&a, path, err);
    if (rc) return rc;
    if (fwrite(data, 1, n, a.f) != n) {
        rc = duet_fail(err, DUET_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        duet_atomic_abort(&a);
        return rc;
    }
    return duet_atomic_commit(&a, err);
}

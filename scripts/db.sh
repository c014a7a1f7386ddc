#!/usr/bin/env bash
# db.sh: print the DSN of a MySQL/MariaDB server for txlock's tests and demo,
# starting (or even installing) one if needed.
#
# Usage: scripts/db.sh [start]   print a DSN (the default)
#        scripts/db.sh stop      stop the throwaway server, if running
#
# The DSN goes to stdout, in the go-sql-driver/mysql format; anything else
# goes to stderr, and nothing at all on success. Idempotent: run it as often
# as you like. In order, the DSN is:
#   1. $DBLOCK_DSN, if set;
#   2. root@tcp(127.0.0.1:3306)/test, if root without password can log in
#      there (database test is created if missing);
#   3. a throwaway mariadbd in ${TMPDIR:-/tmp}/txlock-db on port 33306,
#      reused while it runs, if mariadbd is installed;
#   4. as root with apt-get: mariadb-server is installed and started, then 2
#      or 3.
#
# For tests of this script: TXLOCK_DB_PROBE_PORT replaces 3306 in step 2,
# TXLOCK_DB_PORT replaces 33306 and TXLOCK_DB_DIR the directory in step 3.
set -euo pipefail

probe_port=${TXLOCK_DB_PROBE_PORT:-3306}
port=${TXLOCK_DB_PORT:-33306}
dir=${TXLOCK_DB_DIR:-${TMPDIR:-/tmp}/txlock-db}
pidfile=$dir/mariadbd.pid
start_timeout=30 # seconds
stop_timeout=30  # seconds

log() { printf 'txlock: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

dsn_for() { printf 'root@tcp(127.0.0.1:%s)/test\n' "$1"; }

# client prints the path of the mariadb (or mysql) command-line client.
client() { command -v mariadb || command -v mysql; }

# find_bin NAME prints the path of NAME from PATH or the sbin directories.
find_bin() {
	local d
	command -v "$1" && return 0
	for d in /usr/sbin /usr/local/sbin /usr/bin /usr/local/bin; do
		[[ -x $d/$1 ]] && {
			printf '%s\n' "$d/$1"
			return 0
		}
	done
	return 1
}

# answers PORT succeeds if a server on 127.0.0.1:PORT lets root in without
# password, and creates database test there. Without a client it can only
# check that the port is open.
answers() {
	local c
	if c=$(client); then
		"$c" --no-defaults --protocol=TCP -h 127.0.0.1 -P "$1" -u root --connect-timeout=2 \
			-e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null 2>&1
	elif command -v timeout >/dev/null; then
		timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# running succeeds if the throwaway server's process is alive.
running() {
	local pid
	[[ -s $pidfile ]] && pid=$(<"$pidfile") && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# wait_for PORT [PID] waits until PORT answers, for at most start_timeout
# seconds, and fails early if process PID dies.
wait_for() {
	local deadline=$((SECONDS + start_timeout))
	while ((SECONDS < deadline)); do
		answers "$1" && return 0
		if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then
			return 1
		fi
		sleep 0.1
	done
	answers "$1"
}

# lock_dir serialises concurrent runs of this script on $dir.
lock_dir() {
	mkdir -p "$dir"
	if command -v flock >/dev/null; then
		exec 9>"$dir/.lock"
		flock -w $((start_timeout * 2)) 9 || die "another scripts/db.sh holds $dir/.lock"
	fi
}

# stop_throwaway stops the throwaway server and removes its directory.
stop_throwaway() {
	local pid i
	[[ -d $dir ]] || return 0
	lock_dir
	if running; then
		pid=$(<"$pidfile")
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < stop_timeout * 10; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "mariadbd ($pid) did not stop within ${stop_timeout}s: killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -rf "$dir"
}

# start_throwaway MARIADBD starts (or reuses) the throwaway server and
# prints its DSN.
start_throwaway() {
	local mariadbd=$1 install_db pid
	local -a user=()
	lock_dir
	if running; then
		if wait_for "$port" "$(<"$pidfile")"; then
			dsn_for "$port"
			return 0
		fi
		log "the throwaway server in $dir runs but does not answer on port $port: restarting it"
		stop_throwaway
		lock_dir
	fi
	[[ $(id -u) == 0 ]] && user=(--user=root)
	if [[ ! -d $dir/data/mysql ]]; then
		install_db=$(find_bin mariadb-install-db || find_bin mysql_install_db) ||
			die "mariadbd is installed but mariadb-install-db is not"
		rm -rf "$dir/data"
		if ! "$install_db" --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
			--skip-test-db --skip-name-resolve "${user[@]}" >"$dir/install.log" 2>&1; then
			tail -n 20 "$dir/install.log" >&2
			die "$install_db failed (log: $dir/install.log)"
		fi
	fi
	printf 'CREATE DATABASE IF NOT EXISTS test;\n' >"$dir/init.sql"
	local -a args=(
		--no-defaults
		--datadir="$dir/data"
		--tmpdir="$dir"
		--bind-address=127.0.0.1
		--port="$port"
		--socket="$dir/mysqld.sock"
		--pid-file="$pidfile"
		--log-error="$dir/mariadbd.err"
		--init-file="$dir/init.sql"
		--skip-name-resolve
		--max-connections=1000
		"${user[@]}"
	)
	# Detached from this shell (and from make's Ctrl-C) so that later runs
	# reuse it; `scripts/db.sh stop` ends it.
	# fd 9, the lock of lock_dir, is not passed on: the server would hold it.
	if command -v setsid >/dev/null; then
		setsid "$mariadbd" "${args[@]}" </dev/null >>"$dir/mariadbd.out" 2>&1 9>&- &
	else
		nohup "$mariadbd" "${args[@]}" </dev/null >>"$dir/mariadbd.out" 2>&1 9>&- &
	fi
	pid=$!
	printf '%s\n' "$pid" >"$pidfile"
	if ! wait_for "$port" "$pid"; then
		tail -n 20 "$dir/mariadbd.err" >&2 2>/dev/null || true
		kill -TERM "$pid" 2>/dev/null || true
		die "the throwaway mariadbd did not answer on 127.0.0.1:$port within ${start_timeout}s (log: $dir/mariadbd.err)"
	fi
	dsn_for "$port"
}

# install_and_start installs mariadb-server with apt-get and starts it.
install_and_start() {
	local aptlog=${TMPDIR:-/tmp}/txlock-apt.log
	log "installing mariadb-server with apt-get (log: $aptlog)"
	if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server; } >"$aptlog" 2>&1; then
		tail -n 20 "$aptlog" >&2
		die "apt-get install mariadb-server failed (log: $aptlog)"
	fi
	if ! answers "$probe_port"; then
		if getent passwd mysql >/dev/null; then
			install -d -o mysql -g mysql /run/mysqld
		else
			install -d /run/mysqld
		fi
		start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
		wait_for "$probe_port" || true
	fi
}

main() {
	local mariadbd
	case ${1:-start} in
	start) ;;
	stop)
		stop_throwaway
		return 0
		;;
	*) die "usage: scripts/db.sh [start|stop]" ;;
	esac

	if [[ -n ${DBLOCK_DSN:-} ]]; then
		printf '%s\n' "$DBLOCK_DSN"
		return 0
	fi
	if answers "$probe_port"; then
		dsn_for "$probe_port"
		return 0
	fi
	if ! mariadbd=$(find_bin mariadbd); then
		if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
			install_and_start
			if answers "$probe_port"; then
				dsn_for "$probe_port"
				return 0
			fi
			# The packaged server lets root in through its unix socket only:
			# use a throwaway one, where root has no password.
			mariadbd=$(find_bin mariadbd) || die "mariadb-server is installed but mariadbd is not found"
		else
			die "no MySQL/MariaDB found: run 'sudo apt-get install mariadb-server' or set DBLOCK_DSN"
		fi
	fi
	start_throwaway "$mariadbd"
}

main "$@"

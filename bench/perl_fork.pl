#!/usr/bin/perl
# Perl peer rows for bench/run.py, shaped like the AnyEvent::Fork POD's PERFORMANCE benchmark:
# create a process, run a function, wait in the parent until the socket closes (EOF).
#
#   perl bench/perl_fork.pl MODE BUDGET_SECONDS [PAUSE_SECONDS]
#
# Modes:
#   new       AnyEvent::Fork->new->run("CORE::exit")      (the docs' benchmark; no byte is sent)
#   new_hello AnyEvent::Fork->new->eval(sub hello)->run("hello"): the child writes one byte,
#             like anyfork's row (the per-child eval stands in for Python's per-child import)
#   new_exec  AnyEvent::Fork->new_exec->run("CORE::exit"), then waitpid (a direct child)
#   fork      manual socketpair + fork + POSIX::_exit in the child (the floor)
#   tmpl      $tmpl->fork->run("hello"), $tmpl = AnyEvent::Fork->new->eval(sub hello): a
#             function the template has loaded that writes one byte
#
# With PAUSE_SECONDS, each timed start follows a pause (spaced single starts: nothing of one
# start overlaps the next, whatever a template does between them).
# Prints one line of key=value pairs: count, elapsed (s), lat_med_us (start to first byte, or
# to EOF when the child sends nothing).  One untimed warm-up iteration runs first so that the
# default template's exec is not counted, as in anyfork's rows.
use strict;
use warnings;
use AnyEvent;
use AnyEvent::Fork;
use IO::Handle;
use POSIX ();
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC);
use Time::HiRes qw(time);

my ($mode, $budget, $pause) = @ARGV;
defined $budget or die "usage: $0 MODE BUDGET_SECONDS [PAUSE_SECONDS]\n";
$pause //= 0;
my $tmpl;

sub handed {
    # run()'s callback fires once the queue is written; the condvar makes it a plain wait.
    my ($proc, $func) = @_;
    $proc->run($func, my $cv = AE::cv);
    my $fh = $cv->recv;
    $fh->blocking(1);
    return $fh;
}

sub drain {
    # Read to EOF; returns the time the first read returned (first byte, or EOF itself).
    my ($fh) = @_;
    my ($buf, $first);
    while (1) {
        my $n = sysread $fh, $buf, 4096;
        defined $n or die "sysread: $!";
        $first //= time;
        last if $n == 0;
    }
    return $first;
}

my %once = (
    new => sub {
        my $t0 = time;
        my $fh = handed(AnyEvent::Fork->new, "CORE::exit");
        my $t1 = drain($fh);
        close $fh;
        return $t1 - $t0;
    },
    new_hello => sub {
        my $t0 = time;
        my $proc = AnyEvent::Fork->new->eval('sub hello { syswrite $_[0], "x" }');
        my $fh = handed($proc, "hello");
        my $t1 = drain($fh);
        close $fh;
        return $t1 - $t0;
    },
    new_exec => sub {
        my $t0 = time;
        my $proc = AnyEvent::Fork->new_exec;
        my $pid = $proc->pid;
        my $fh = handed($proc, "CORE::exit");
        my $t1 = drain($fh);
        close $fh;
        waitpid $pid, 0;    # our direct child: reap it, or zombies pile up
        return $t1 - $t0;
    },
    tmpl => sub {
        $tmpl //= AnyEvent::Fork->new->eval('sub hello { syswrite $_[0], "x" }');
        my $t0 = time;
        my $fh = handed($tmpl->fork, "hello");
        my $t1 = drain($fh);
        close $fh;
        return $t1 - $t0;
    },
    fork => sub {
        my $t0 = time;
        socketpair my $p, my $c, AF_UNIX, SOCK_STREAM, PF_UNSPEC or die "socketpair: $!";
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            close $p;
            syswrite $c, "x";
            POSIX::_exit(0);
        }
        close $c;
        my $t1 = drain($p);
        close $p;
        waitpid $pid, 0;
        return $t1 - $t0;
    },
);

my $once = $once{$mode} or die "unknown mode $mode (one of: @{[sort keys %once]})\n";
$once->();    # warm-up

my @lat;
my $start = time;
my $elapsed;
while (1) {
    select undef, undef, undef, $pause if $pause;
    push @lat, $once->();
    $elapsed = time - $start;
    last if $elapsed >= $budget && @lat >= 3;
}
@lat = sort { $a <=> $b } @lat;
my $mid = @lat >> 1;
my $med = @lat % 2 ? $lat[$mid] : ($lat[$mid - 1] + $lat[$mid]) / 2;
printf "count=%d elapsed=%.6f lat_med_us=%.1f\n", scalar @lat, $elapsed, $med * 1e6;

#!/usr/bin/perl
# A small SMSC for switchd's interop tests, built on Net::SMPP (Debian
# libnet-smpp-perl), an SMPP implementation independent of switchd's.
#
#   perl smsc.pl PORT LOGFILE
#
# Listens on 127.0.0.1:PORT (0: any free port) and prints "PORT <n>" once
# listening. Accepts any bind. Answers each submit_sm / data_sm with a new
# message id written in hex and, when registered_delivery asks for it, sends
# a delivery receipt naming the same id in decimal (switchd must match the
# two). Every submit is appended to LOGFILE as
#   SUBMIT <id-hex> <source> <destination> <esm_class> <hex of short_message>
# and every deliver_sm_resp as "DLRACK <sequence> <status>".
#
# Environment: SMSC_THROTTLE=N answers ESME_RTHROTTLED to the first N submits
# of each connection; SMSC_MO="source,destination,text" sends one MO after
# each bind.

use strict;
use warnings;
use Fcntl qw(:flock);
use IO::Handle;
use Net::SMPP;

my ($port, $logfile) = @ARGV;
die "usage: smsc.pl PORT LOGFILE\n" unless defined $logfile;
$Net::SMPP::trace = 0;

my $server = Net::SMPP->new_listen('127.0.0.1', port => $port, smpp_version => 0x34, listen => 16)
    or die "cannot listen on port $port: $!\n";
STDOUT->autoflush(1);
print "PORT ", $server->sockport, "\n";

sub record {
    my ($line) = @_;
    open(my $fh, '>>', $logfile) or die "cannot open $logfile: $!\n";
    flock($fh, LOCK_EX);
    print $fh "$line\n";
    close($fh);
}

$SIG{CHLD} = 'IGNORE';
my $c;
while (1) {
    $c = $server->accept;
    next unless defined $c;
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;
    last if $pid == 0;    # the child serves this connection
    undef $c;
}
undef $server;

my $throttle = $ENV{SMSC_THROTTLE} || 0;
my $counter = 0;
my %binds = (0x00000001 => 'bind_receiver_resp', 0x00000002 => 'bind_transmitter_resp',
             0x00000009 => 'bind_transceiver_resp');

while (1) {
    my $pdu = $c->read_pdu() or exit 0;
    my $cmd = $pdu->{cmd};
    if (exists $binds{$cmd}) {
        my $method = $binds{$cmd};
        $c->$method(system_id => 'PERLSMSC', seq => $pdu->{seq});
        if ($ENV{SMSC_MO}) {
            my ($source, $destination, $text) = split /,/, $ENV{SMSC_MO}, 3;
            $c->deliver_sm(source_addr => $source, destination_addr => $destination, esm_class => 0,
                           short_message => $text, async => 1);
        }
    } elsif ($cmd == 0x00000004 || $cmd == 0x00000103) {    # submit_sm, data_sm
        my $respond = $cmd == 0x00000004 ? 'submit_sm_resp' : 'data_sm_resp';
        if ($throttle > 0) {
            $throttle--;
            $c->$respond(message_id => '', seq => $pdu->{seq}, status => 0x58);
            next;
        }
        my $number = $$ * 100000 + ++$counter;
        my $id = sprintf('%X', $number);
        my $content = defined $pdu->{short_message} ? $pdu->{short_message} : '';
        record(join(' ', 'SUBMIT', $id, $pdu->{source_addr}, $pdu->{destination_addr}, $pdu->{esm_class},
                    unpack('H*', $content)));
        $c->$respond(message_id => $id, seq => $pdu->{seq});
        if (($pdu->{registered_delivery} || 0) & 3) {
            my $text = "id:$number sub:001 dlvrd:001 submit date:2611211200 done date:2611211201 "
                     . "stat:DELIVRD err:000 text:";
            $c->deliver_sm(source_addr => $pdu->{destination_addr}, destination_addr => $pdu->{source_addr},
                           esm_class => 0x04, short_message => $text, async => 1);
        }
    } elsif ($cmd == 0x80000005) {    # deliver_sm_resp
        record("DLRACK $pdu->{seq} $pdu->{status}");
    } elsif ($cmd == 0x00000015) {
        $c->enquire_link_resp(seq => $pdu->{seq});
    } elsif ($cmd == 0x00000006) {
        $c->unbind_resp(seq => $pdu->{seq});
        exit 0;
    } elsif ($cmd & 0x80000000) {
        next;    # other responses: nothing to do
    } else {
        $c->generic_nack(seq => $pdu->{seq}, status => 0x03);
    }
}

# Passes when the DNS client service runs and answers a lookup of localhost.
$ErrorActionPreference = 'Stop'
try {
    $svc = Get-Service -Name Dnscache
    if ($svc.Status -ne 'Running') { Write-Output "Dnscache is $($svc.Status)"; exit 1 }
    Resolve-DnsName -Name localhost | Out-Null
    Write-Output 'DNS client runs and answers'
    exit 0
} catch {
    Write-Output "lookup failed: $($_.Exception.Message)"
    exit 1
}

# Flush the Windows DNS client cache.
$ErrorActionPreference = 'Stop'
try {
    Clear-DnsClientCache
    Write-Output 'DNS client cache flushed'
    exit 0
} catch {
    [Console]::Error.WriteLine("could not flush the DNS cache: $($_.Exception.Message)")
    exit 1
}

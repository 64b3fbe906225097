/* kvmtest: create a VM with KVM and run a tiny real-mode guest on each processor.
 *
 * Built static by vmxdbg's image builder (vmxdbg/hypervisors/linux_kvm/image.py) and run as the
 * last step of the image's /init. Before it opens /dev/kvm it stops at Bochs'
 * magic breakpoint (xchg bx, bx), sleeping between stops, until the debugger
 * writes 1 into `vmxdbg_go` (found in this program's symbol table), so the
 * debugger can set its breakpoints after kvm_intel is loaded and before KVM's
 * first VMXON. No register of the program is changed from outside.
 * For each processor in turn: pin to it, KVM_CREATE_VM (KVM runs VMXON on
 * every processor here), one vCPU whose guest writes 'K' to port 0x10 and
 * halts, KVM_RUN until HLT. Every VM stays open until the program exits, so KVM
 * runs VMXON once per processor (at the first VM) and not again.
 * Prints "kvmtest cpuN: ..." lines on the console and "kvmtest done".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static const unsigned char guest_code[] = {
    0xb0, 'K',        /* mov al, 'K' */
    0xe6, 0x10,       /* out 0x10, al */
    0xf4,             /* hlt */
};

volatile long vmxdbg_go;      /* the debugger writes 1 here */

static int run_on(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        printf("kvmtest cpu%d: cannot pin to it\n", cpu);
        return 1;
    }
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) { printf("kvmtest cpu%d: no /dev/kvm\n", cpu); return 1; }
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) { printf("kvmtest cpu%d: KVM_CREATE_VM failed\n", cpu); return 1; }
    unsigned char *mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memcpy(mem, guest_code, sizeof guest_code);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = 0x1000, .userspace_addr = (unsigned long)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        printf("kvmtest cpu%d: KVM_SET_USER_MEMORY_REGION failed\n", cpu); return 1;
    }
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) { printf("kvmtest cpu%d: KVM_CREATE_VCPU failed\n", cpu); return 1; }
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct kvm_sregs sregs;
    ioctl(vcpu, KVM_GET_SREGS, &sregs);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    ioctl(vcpu, KVM_SET_SREGS, &sregs);
    struct kvm_regs regs = { .rip = 0, .rflags = 2 };
    ioctl(vcpu, KVM_SET_REGS, &regs);
    for (int i = 0; i < 8; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) { printf("kvmtest cpu%d: KVM_RUN failed\n", cpu); return 1; }
        if (run->exit_reason == KVM_EXIT_IO) {
            printf("kvmtest cpu%d: exit io port 0x%x value '%c'\n", cpu, run->io.port,
                   *((char *)run + run->io.data_offset));
        } else if (run->exit_reason == KVM_EXIT_HLT) {
            printf("kvmtest cpu%d: exit hlt\n", cpu);
            break;
        } else {
            printf("kvmtest cpu%d: exit reason %u\n", cpu, run->exit_reason);
            break;
        }
    }
    return 0;   /* the VM stays open: KVM's VMXON happens once, at the first VM */
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    printf("kvmtest: %ld processors\n", n);
    vmxdbg_go = 0;   /* written first: its page is this process's own, not the shared zero page */
    while (vmxdbg_go != 1) {
        __asm__ volatile("xchg %%bx, %%bx" ::: "memory");   /* Bochs magic breakpoint */
        usleep(20000);
    }
    int bad = 0;
    for (int cpu = 0; cpu < n; cpu++)
        bad |= run_on(cpu);
    printf("kvmtest done\n");
    return bad;
}
